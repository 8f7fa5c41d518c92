"""Files a person gives and gets.

    images.py     reading image files (Pillow, with its guards): segment, tracking frames, benchmarks
    outputs.py    writing results without losing a user's file or leaving a half-written one
    visualize.py  pictures: masks and boxes over the image, tracking strips

Imports: errors only (and numpy, Pillow).
"""
