"""Cutting clips out of a source video with PyAV: the transcode stage's codec machinery.

source: one seek and one forward pass over a chunk of the source; encode: frame-accurate
re-encoding; stream_copy: whole GOPs copied as they are; audio: each clip's share of the
source's audio; output: in-memory clip containers; colour: the colour clips keep and models
see, with hdr: HDR tone-mapped to SDR.

Codecs and decoders run the threads they are given (the stage's reservation), never the
machine's core count: x264's output depends on its thread count, and stays the same on every
machine and executor.
"""
