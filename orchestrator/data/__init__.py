"""Shards to batches: the sampling plan (which rank reads what), shard reading, host decoding
and crops, shared-memory batch slots, the streams and their loader, the device transform. May
import config, storage and the shards' format; nothing that trains."""
