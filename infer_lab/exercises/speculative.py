"""Exercises of lab 05 (speculative decoding)."""

from __future__ import annotations

from .checker import Exercise

LAB = "05_speculative_decoding"

EXERCISES: list[Exercise] = []
