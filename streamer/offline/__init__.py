"""The offline commands: score, evaluate (NAB scoring), replay, train."""
