"""The rehearsal methods, one file per method (ER, A-GEM, DER++, ER-ACE, GDumb, iCaRL), on the
tensor memories of ``memory`` and the shared plugin base of ``base``."""
