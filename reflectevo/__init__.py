"""reflectevo."""
