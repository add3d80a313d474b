"""Export a crnn checkpoint (or a config) to ONNX and check it with onnxruntime (see :mod:`crnn.export`).

python scripts/export_onnx.py --ckpt outputs/runs/.../checkpoints/best.ckpt
python scripts/export_onnx.py backbone=resnet20 rnn=sws_birnn --out resnet20_sws_birnn.onnx
"""

from crnn.export import main

if __name__ == "__main__":
    main()
