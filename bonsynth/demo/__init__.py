"""The embedded offline default: demo-size models built from `data/`, and `bonsynth quickstart`."""
