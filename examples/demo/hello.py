"""Says where it runs: the host, the working directory and the arguments it was given."""
import os
import socket
import sys

print(f"hello from {socket.gethostname()}")
print(f"cwd: {os.getcwd()}")
print(f"args: {sys.argv[1:]}")
