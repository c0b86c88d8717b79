"""PostgreSQL: the pool, named SQL, migrations and the stores that own each table."""
