"""Exercises of lab 02 (quantization)."""

from __future__ import annotations

from .checker import Exercise

LAB = "02_quantization"

EXERCISES: list[Exercise] = []
