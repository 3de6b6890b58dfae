# One image for the web app and the worker: docker-compose.yml gives each its command.
FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY *.py ./
# Not root: a task that runs attacker-controlled input should not own the container.
RUN useradd --create-home orders && mkdir /data && chown orders /data
USER orders
