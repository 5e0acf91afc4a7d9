"""The protected source database, as Dagster sees it."""
