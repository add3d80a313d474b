"""crnn.tasks"""
