"""Gates: thresholds from gates.yaml, the case catalogue, and the pytest plugin that judges each stage."""
