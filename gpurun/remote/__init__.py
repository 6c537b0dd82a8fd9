"""The client side of a rented instance: SSH sessions, file sync, event following."""
