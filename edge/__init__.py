"""lanewatch edge service: lanes, occupancies, fusion, decisions, the alert journal and bus."""
