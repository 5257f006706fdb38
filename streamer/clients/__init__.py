"""The Kafka seam: one consumer/producer surface (`base`), two client backends."""
