"""Inbound sources: the CometD CDC stream and SOQL polling, behind one `Source` protocol."""
