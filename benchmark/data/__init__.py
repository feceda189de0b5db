"""The benchmark's data: the scenario registry (:mod:`.scenarios`) and the source datasets it
reads (:mod:`.datasets`)."""
