"""Training recipes for the zoo: the corpus (the Python standard library's source), the
byte-level BPE tokenizer, and the models trained on them.

Submodules are imported on use (``from leapdec.train import corpus``) so that importing the
package stays light.
"""
