"""Effective receptive field of a layer or a composed model: PNG heatmaps and a 95%-mass radius.

    python scripts/receptive_field.py --layer conv3x3 --layer srnn --layer sws_birnn --channels 16 --size 16
    python scripts/receptive_field.py backbone=resnet20 --sweep rnn=none,srnn,sws_birnn

The logic (and the exact definition) is in :mod:`crnn.analysis.receptive_field`.
"""

from crnn.analysis.receptive_field import main

if __name__ == "__main__":
    main()
