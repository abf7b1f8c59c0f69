"""The payment-order join: a pure core (core.py), its changelog codec, and the Kafka runtime."""
