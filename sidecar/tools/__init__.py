"""What an operator (or a test) runs by hand, never the serving runtime: certificate
inspection, probing and dev certificates, a Meta-like sender, a recording upstream,
sample deliveries, and a launcher for a real ``sidecar serve`` process.

The runtime (everything under ``sidecar`` but ``cli`` and ``tools``) never imports this
package; ``tests/unit/test_layering.py`` holds that rule."""
