import sys
print(sys.implementation.name)
