"""De-identification of DICOM folders and clinical text, with keyed (HMAC) pseudonyms."""
