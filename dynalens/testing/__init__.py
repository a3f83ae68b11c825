"""Conformance checks that every implementation of an extension point runs."""
