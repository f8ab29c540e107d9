"""Bridges to third-party frameworks (ultralytics); each module imports its framework lazily."""
