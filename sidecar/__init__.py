"""WhatsApp webhook sidecar: mTLS + signature-verifying ingress with durable delivery."""

__version__ = "0.1.0"
