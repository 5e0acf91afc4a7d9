"""PostgreSQL: tool discovery, connections, throwaway local clusters."""
