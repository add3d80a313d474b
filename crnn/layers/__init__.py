"""crnn.layers"""
