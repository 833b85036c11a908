"""The site's own figures: flags per day, PPV and sensitivity from the radiologists' verdicts, time to flag, input
drift against the model cards (``report``), from pure statistics (``stats``), drawn as inline SVG (``svg``)."""
