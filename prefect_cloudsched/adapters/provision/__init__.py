"""Provisioners: start, reuse, release and find the instances our placements run on."""
