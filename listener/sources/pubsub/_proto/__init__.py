"""Generated Pub/Sub API stubs and their .proto (see generate.py); do not edit the stubs."""
