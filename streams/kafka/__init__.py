"""Everything that speaks to librdkafka: client configuration, admin, topics, lag."""
