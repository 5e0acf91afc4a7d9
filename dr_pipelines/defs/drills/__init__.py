"""Monthly DR drills in Dagster: one partition per month, a cron freshness policy flags a missed drill."""
