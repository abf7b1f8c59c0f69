"""The recovery writer: a faust-streaming agent writing missing orders into PostgreSQL."""
