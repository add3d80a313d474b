"""crnn.models"""
