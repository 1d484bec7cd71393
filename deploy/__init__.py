"""Deployment: certificates and keys (cryptography), Dockerfiles, runbooks."""
