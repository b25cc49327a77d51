"""The FlatBuffers schema of the .rbln format (rbln.fbs), installed as rblnc.schemas so that
the reader's verifier finds it in a wheel as in a checkout."""
