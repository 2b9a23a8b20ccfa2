"""The manifest's vocabulary and checks: the schema, manifests, blueprints (pure data: no torch, no Jinja)."""
