"""streamer: a streaming anomaly detection daemon.

Ticks arrive from Kafka (or a recorded file), each stream advances its own LSTM state one step per tick,
and its evidence (the forecast's surprise, the time of day, range novelty) is calibrated on the stream's own
history into an anomaly score that is published as Prometheus metrics.
"""

__version__ = "0.1.0"
