"""Serving models on live audio: audio sources, the microphone loop and the WebSocket server.

- :mod:`asr.serve.sources`: where samples come from (a microphone through sounddevice/PortAudio,
  or a file read as if it were one), one interface for both.
- :mod:`asr.serve.listen`: the ``asr listen`` loop (partial and final transcripts with endpointing).
- :mod:`asr.serve.server`: the ``asr serve`` / ``kws serve`` WebSocket server.

Nothing here imports training code.
"""
