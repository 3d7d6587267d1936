"""Shared test setup: quiet TensorFlow/absl logging, a per-session data cache."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `configs` is imported as a package by some tests
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
