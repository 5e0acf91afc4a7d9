"""The demo: a multi-tenant clinic database (schema as migrations) and a deterministic data generator.

``schema.MIGRATIONS_DIR`` holds the clinic schema; ``generate.seed_demo`` migrates a database
and fills it with synthetic (never real) patient data, the same bytes for the same seed.
"""
