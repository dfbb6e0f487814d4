"""What qsync knows of the models it calls, kept in one place: prices and limits (`pricing.json`, replaceable
with $QSYNC_PRICING_FILE), the task instructions gemini-embedding-2 takes in its input, and how many tokens a
text, an image or a PDF page is estimated to cost before the API says. Nothing here talks to a service."""
