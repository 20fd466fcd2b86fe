"""The config language: safe YAML, `extends`, overrides, `${...}` references, checks against
signatures, `--list`. Must not import launch/, train/ or run/."""
