"""Small-footprint keyword spotting on the asr toolkit's front-end and data layer."""
