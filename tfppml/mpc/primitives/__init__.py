"""The sub-protocols of the three-party runtime, one family per module (mixed into `tfppml.mpc.context.OpContext`):

- `resharing`: terms of a 3-out-of-3 sharing back into pairs, with truncation; products.
- `binary`: AND gates, the sign bit by a bit-plane adder, bit-to-arithmetic conversion.
- `bit_injection`: a shared bit times a shared value by oblivious transfer.
- `fss`: the ReLU, by function secret sharing or the adder.
"""
