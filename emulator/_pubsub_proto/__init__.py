"""Generated Pub/Sub API stubs (see listener/sources/pubsub/_proto/generate.py); do not edit."""
