"""The embedded local stack: every component as a supervised process on loopback."""
