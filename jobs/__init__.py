"""Thin RQ job functions; the work lives in the portal's domain modules."""
