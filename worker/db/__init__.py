"""Storage: the SQLAlchemy models and the session factory."""
