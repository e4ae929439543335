"""Job entry points: segment, archive, train."""
