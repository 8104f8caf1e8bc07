"""Data files shipped with minibn (see README.md here for their origin and licenses).

Load them through ``minibn.data``, not directly.
"""
